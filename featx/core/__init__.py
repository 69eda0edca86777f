"""What every layer of featx shares: errors, atomic files and locks, hashing, devices and
precisions, running under torchrun, progress reporting. Imports nothing above it."""
