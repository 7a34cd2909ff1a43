"""The Flower ClientApp of flnorm."""
