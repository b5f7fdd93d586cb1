"""The version of ngfkit and where its releases live, in one place: the package, the recorded
results, the book and the release workflow read it."""
__version__ = "0.1.0"
#: the public repository (the book's Colab cells install from it, its releases carry the
#: readers' cache archive)
REPOSITORY = "https://github.com/ngfkit/ngfkit"
#: the git tag of this release: the published book is built from it
RELEASE_TAG = f"v{__version__}"
