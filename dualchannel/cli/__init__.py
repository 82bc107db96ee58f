"""Sub-commands of the ``dualchannel`` command line."""
