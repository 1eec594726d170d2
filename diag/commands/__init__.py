"""One module per CLI sub-command; each imports only click and light diag modules at top level."""
