"""The host the master runs on: Linux process controls, cgroups, systemd, the
pid file, privileges, sockets and listeners, the log, process titles, and the
bounded client server the control socket and the metrics endpoint share."""
