"""`cifar100 serve`: a trained model behind HTTP: the application (app.py) and what its routes
share (service.py); the page (page.py), /predict and the model card (json_api.py), the Open
Inference Protocol (v2.py over its codec, v2_codec.py); batching (batching.py), metrics
(monitoring.py), the limits on what a request may cost (limits.py, multipart.py); the command
(server.py), one serving process on uvicorn (process.py) with its guarded HTTP protocol
(protocol.py), worker processes (workers.py), and the settings of all of it (settings.py)."""
