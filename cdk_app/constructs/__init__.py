"""One concern per construct; stacks only compose these."""
