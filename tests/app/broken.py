"""A module whose own code fails on import (for the CLI's error message)."""

raise RuntimeError("this module cannot be imported")
