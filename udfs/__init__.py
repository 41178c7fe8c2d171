"""The Python functions DuckDB calls. ``register(con, settings)`` adds them to a connection.

Names starting with ``_pm_`` are implementation details behind the SQL macros in ``sql/``
(DuckDB Python UDFs cannot be overloaded by argument type, so e.g. ``pm_embed_image`` is a macro
dispatching on ``typeof`` to ``_pm_embed_image_path`` / ``_pm_embed_image_blob``).
"""

from .codes import register_code_udfs
from .embed import register_embedding_udfs
from .matching import register_matching_udfs
from .models import register_model_udfs
from .review import register_review_udfs

__all__ = ["register_code_udfs", "register_embedding_udfs", "register_matching_udfs", "register_model_udfs", "register_review_udfs"]
