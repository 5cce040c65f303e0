"""``fleet-agent doctor``: is this van ready for the road?

:mod:`~firmware_agent.doctor.checks` judges (pure functions fed with what was
observed, and a clock), :mod:`~firmware_agent.doctor.probes` observes (the receiver,
scanners, GPIO, broker, state directory, each with a timeout),
:mod:`~firmware_agent.doctor.cli` is the command. docs/configuration.md lists the
checks and what each failure means.
"""
