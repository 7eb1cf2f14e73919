"""medkd.data."""
