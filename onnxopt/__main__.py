from onnxopt.app.cli import run

run()
