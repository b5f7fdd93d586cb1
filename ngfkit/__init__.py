"""ngfkit: backdoor removal by Natural Gradient Fine-tuning (NGF), reproduced and benchmarked."""
__version__ = "0.1.0"
