"""The command line's commands, one module each (``register(subparsers)``
adds its parser and sets ``run``): ``demo``, ``fds``, ``info``, ``bench``
(with ``bench_plugin``, the pytest plugin's scenario) and ``soak``.
``reference`` is the Python checkpoint-before-close subclass they compare
against, and the reader process they play against; ``databases`` makes the
WAL databases they (and the tests) start from.  Nothing here is imported by
``import hermes_kanban_native``.
"""
