"""The server, a thin I/O shell around the wire: routing and sessions (``server``), who may come
in (``admission`` applying ``auth``), one session's tasks (``session_stream``), its settings
(``server_config``), running it (``runner``), metrics and the WebRTC transport."""
