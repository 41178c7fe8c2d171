-- Candidate matches as rows: one per (supplier offer, catalog product) candidate, with scores and a decision.
-- depends_on: {{ ref('catalog_index') }}
-- depends_on: {{ ref('supplier_index') }}
select *
from match_products('{{ ref("stg_supplier_offers") }}', '{{ ref("stg_catalog") }}', k := 5)
