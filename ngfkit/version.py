"""The version of ngfkit, in one place: the package, the recorded results and the build read it."""
__version__ = "0.1.0"
