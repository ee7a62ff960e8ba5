"""The wire, sans-I/O: the LipsyncStream protocol's bytes (``protocol``), one session's rules
(``session``), and the HTTP/1.1 request of a connection before it becomes a websocket
(``connection``)."""
