"""gnn stage."""
