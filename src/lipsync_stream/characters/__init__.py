"""Characters: fetching a reference safely (``fetch``), decoding its video with bounded memory
(``video``), faces and landmarks (``faces``, ``landmarks``; MediaPipe's models through ONNX Runtime in ``facemodels``), the shared store
(``character``) and ``prepare``, which makes a character directory from a talking-head video."""
