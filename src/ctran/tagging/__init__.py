"""Tag a library of images starting from the tags it already has."""
