"""`cifar100 serve`: a trained model behind HTTP: the page (page.py), /predict and the model
card (app.py), the Open Inference Protocol (v2.py), batching (batching.py), metrics
(monitoring.py), the uvicorn process around them (server.py) with its guarded HTTP protocol
(protocol.py), the limits on what a request may cost (limits.py, multipart.py), worker
processes (workers.py), and the settings of all of it (settings.py)."""
