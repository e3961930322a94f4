"""The two well-known TCP ports, one home each: gearmand's and the management console's.

Kept in a module of its own so that the console client (a separate, light process) and the
config reader share the numbers without importing each other.
"""

#: gearmand's port, for a `server` entry written without one.
GEARMAND_PORT = 4730

#: Gearman::Driver's console port: the daemon's default `console_port` and the clients' target.
CONSOLE_PORT = 47300
