"""``ctl-serve``: a run's recommendations over HTTP (FastAPI + uvicorn).

``app.create_app`` builds the application around a :class:`~ctl_lightning.serve.state.Served` run
(the retrieval layer's :class:`~ctl_lightning.retrieval.recommend.Recommender` plus a micro-batching
image embedder); ``cli`` is the command line. Answers use the schema of ``recommendations.json``
(:mod:`ctl_lightning.retrieval.schema`); errors are JSON with a stable code (:mod:`.errors`).
"""
