"""The Streamlit page (``make app``): similar and complementary products from a run's catalogs.

``streamlit_app.py`` is the page; ``logic.py`` holds everything that does not need Streamlit (run
discovery, argument and input parsing, queries, error messages), so it can be tested directly.
"""
