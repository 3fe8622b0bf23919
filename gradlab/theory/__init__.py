"""What theory predicts from a config alone: Gaussian quadrature, activation forms, initializer variances, mean field, BatchNorm, residual and recurrent theory. numpy only."""
