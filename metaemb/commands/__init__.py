"""The `metaemb` sub-commands, one module per command or family; cli.py assembles them."""
