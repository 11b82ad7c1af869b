"""A library annotated with the model in the loop: every answer kept, and learnt from."""
