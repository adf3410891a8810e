"""Benchmarks of our LoRA against PEFT and against a no-LoRA floor (speed), and of our training app
against PEFT + Hugging Face Trainer in a race of whole processes (accuracy). Shared helpers live in
benchmarks/common.py; results land in benchmarks/results/*.json, and benchmarks/report.py turns them
into the tables in benchmarks/README.md.

Layering: benchmarks may import `lora` and `train`; neither may import `benchmarks`.
"""
