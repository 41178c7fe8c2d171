-- Refresh the LanceDB index of the catalog. pm_index is incremental: only new or changed offers are
-- embedded, deleted ones removed; each dbt run appends one row of refresh statistics (an audit log).
{{ config(materialized='incremental') }}
select *, current_timestamp as refreshed_at
from pm_index('{{ ref("stg_catalog") }}')
