"""medkd.distill."""
