"""Generated from proto/igbutton/v1 by `make proto`. Do not edit."""
