"""A fork of mmjax living outside it: a tower, a loss and an evaluator."""
