"""What a finished run becomes: `python -m train.evaluate` (evaluate), `train.predict` and bulk scoring
(predict, scoring), `train.export` to PEFT, transformers or ONNX (export) with a hub model card (modelcard).
These tools use the main path (train.model, train.data, train.rundir); the main path never imports them."""
