"""Index formats of a snapshot, each with the code that writes it and the reader that serves it."""
