"""(to be written)"""

COMMANDS = ()
