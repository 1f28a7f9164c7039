"""Operating consumer groups: the GroupService RPCs over storage.groups."""
