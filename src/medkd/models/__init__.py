"""medkd.models."""
