"""Other tools' training loops: a Lightning callback that watches any LightningModule."""
