// Keeps a role library non-empty while its folder is being filled in.
