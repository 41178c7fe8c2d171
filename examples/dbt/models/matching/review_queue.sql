-- What humans review: uncertain pairs, best first, with both titles.
select
    m.source_id,
    s.title as supplier_title,
    m.target_id,
    c.title as catalog_title,
    m.score,
    m.text_score,
    m.image_score,
    m.lexical_score,
    m.price_ratio
from {{ ref('candidate_matches') }} as m
join {{ ref('stg_supplier_offers') }} as s on s.id = m.source_id
join {{ ref('stg_catalog') }} as c on c.id = m.target_id
where m.decision = 'review'
order by m.score desc
