"""The leaves everything else stands on: errors, the random model's configuration, the book's
attention classes (torch only) and the registry through which results find their display."""
