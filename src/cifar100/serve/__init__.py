"""`cifar100 serve`: a trained model behind HTTP: the page (page.py), /predict and the model
card (app.py), the Open Inference Protocol (v2.py), batching (batching.py), metrics
(monitoring.py), and the uvicorn process around them (server.py)."""
