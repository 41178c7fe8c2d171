-- Index the supplier feed too, so match_products reuses its vectors (unchanged offers are never re-embedded).
{{ config(materialized='incremental') }}
select *, current_timestamp as refreshed_at
from pm_index('{{ ref("stg_supplier_offers") }}')
