-- Fails (returns rows) when a candidate pair matches an offer with itself.
{% test no_self_pairs(model, source_column, target_column) %}
select *
from {{ model }}
where source_table = target_table
  and cast({{ source_column }} as varchar) = cast({{ target_column }} as varchar)
{% endtest %}
