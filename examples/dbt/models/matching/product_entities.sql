-- One stable entity id per offer: connected components over the accepted pairs.
select *
from product_clusters('{{ ref("candidate_matches") }}')
