-- analytics.film_dim: one row per film with its language, categories and actors, built from the raw
-- Pagila tables (pagila_raw, kept as loaded) by upsert, the raw -> normalized pattern. Run by the
-- sql_film_dim task after every load of dags/sources/pagila.yaml, in one transaction.
CREATE SCHEMA IF NOT EXISTS analytics;

CREATE TABLE IF NOT EXISTS analytics.film_dim (
    film_id        integer PRIMARY KEY,
    title          text NOT NULL,
    description    text,
    release_year   integer,
    language       text,
    rating         text,
    length_minutes integer,
    rental_rate    numeric(4,2),
    categories     text[] NOT NULL,
    actors         text[] NOT NULL,
    actor_count    integer NOT NULL,
    partition_date date NOT NULL,
    updated_at     timestamp with time zone NOT NULL DEFAULT now()
);

INSERT INTO analytics.film_dim AS d (film_id, title, description, release_year, language, rating, length_minutes,
                                     rental_rate, categories, actors, actor_count, partition_date)
SELECT f.film_id, f.title, f.description, f.release_year, btrim(l.name), f.rating::text, f.length, f.rental_rate,
       coalesce(c.names, '{}'), coalesce(a.names, '{}'), coalesce(cardinality(a.names), 0),
       DATE '{{ partition_date }}'
FROM pagila_raw.film f
LEFT JOIN pagila_raw.language l ON l.language_id = f.language_id
LEFT JOIN LATERAL (
    SELECT array_agg(c.name ORDER BY c.name) AS names
    FROM pagila_raw.film_category fc JOIN pagila_raw.category c ON c.category_id = fc.category_id
    WHERE fc.film_id = f.film_id
) c ON true
LEFT JOIN LATERAL (
    SELECT array_agg(a.first_name || ' ' || a.last_name ORDER BY a.last_name, a.first_name) AS names
    FROM pagila_raw.film_actor fa JOIN pagila_raw.actor a ON a.actor_id = fa.actor_id
    WHERE fa.film_id = f.film_id
) a ON true
ON CONFLICT (film_id) DO UPDATE SET
    title = EXCLUDED.title, description = EXCLUDED.description, release_year = EXCLUDED.release_year,
    language = EXCLUDED.language, rating = EXCLUDED.rating, length_minutes = EXCLUDED.length_minutes,
    rental_rate = EXCLUDED.rental_rate, categories = EXCLUDED.categories, actors = EXCLUDED.actors,
    actor_count = EXCLUDED.actor_count, partition_date = EXCLUDED.partition_date, updated_at = now()
WHERE (d.title, d.description, d.release_year, d.language, d.rating, d.length_minutes, d.rental_rate,
       d.categories, d.actors, d.partition_date)
      IS DISTINCT FROM
      (EXCLUDED.title, EXCLUDED.description, EXCLUDED.release_year, EXCLUDED.language, EXCLUDED.rating,
       EXCLUDED.length_minutes, EXCLUDED.rental_rate, EXCLUDED.categories, EXCLUDED.actors,
       EXCLUDED.partition_date);

-- Films gone from the source leave the dimension too.
DELETE FROM analytics.film_dim d WHERE NOT EXISTS (SELECT 1 FROM pagila_raw.film f WHERE f.film_id = d.film_id);
