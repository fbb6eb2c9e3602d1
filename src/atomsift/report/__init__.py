"""Tables, figures and the report; the paper's published numbers."""
