//! The demo catalog `shopmesh up` creates on its first start: a two-level category tree and a
//! few hundred products with titles, descriptions and attributes in English, German and
//! French, prices between 1.00 and 500.00 EUR. Deterministic, so every fresh start looks alike.

use std::collections::HashMap;

use shopmesh_proto::shopmesh::catalog::v1::{
    CreateCategoryRequest, CreateProductRequest, ProductTranslation,
};
use shopmesh_proto::shopmesh::common::v1::Money;

use shopmesh_kit::clock::now_ms;
use uuid::Uuid;

use crate::handler::CatalogHandler;
use crate::store::{CategoryRecord, ProductRecord, ProductText, StoreError};

/// A word in English, German and French.
type Word = [&'static str; 3];

/// A leaf category: slug, names, and the nouns of its products.
type Leaf = (&'static str, Word, &'static [Word]);
/// A top-level category: slug, names, and its leaves.
type Department = (&'static str, Word, &'static [Leaf]);

const TREE: &[Department] = &[
    (
        "footwear",
        ["Footwear", "Schuhe", "Chaussures"],
        &[
            (
                "running-shoes",
                ["Running shoes", "Laufschuhe", "Chaussures de course"],
                &[
                    ["running shoe", "Laufschuh", "chaussure de course"],
                    ["trail shoe", "Trailschuh", "chaussure de trail"],
                ],
            ),
            (
                "boots",
                ["Boots", "Stiefel", "Bottes"],
                &[
                    ["hiking boot", "Wanderstiefel", "chaussure de randonnée"],
                    ["winter boot", "Winterstiefel", "botte d'hiver"],
                ],
            ),
            (
                "sandals",
                ["Sandals", "Sandalen", "Sandales"],
                &[["sandal", "Sandale", "sandale"]],
            ),
        ],
    ),
    (
        "clothing",
        ["Clothing", "Kleidung", "Vêtements"],
        &[
            (
                "jackets",
                ["Jackets", "Jacken", "Vestes"],
                &[
                    ["rain jacket", "Regenjacke", "veste de pluie"],
                    ["down jacket", "Daunenjacke", "doudoune"],
                ],
            ),
            (
                "shirts",
                ["Shirts", "Hemden", "Chemises"],
                &[
                    ["linen shirt", "Leinenhemd", "chemise en lin"],
                    ["t-shirt", "T-Shirt", "t-shirt"],
                ],
            ),
            (
                "trousers",
                ["Trousers", "Hosen", "Pantalons"],
                &[
                    ["hiking trousers", "Wanderhose", "pantalon de randonnée"],
                    ["chinos", "Chinohose", "chino"],
                ],
            ),
        ],
    ),
    (
        "outdoor",
        ["Outdoor", "Outdoor", "Plein air"],
        &[
            (
                "tents",
                ["Tents", "Zelte", "Tentes"],
                &[
                    ["dome tent", "Kuppelzelt", "tente dôme"],
                    ["tunnel tent", "Tunnelzelt", "tente tunnel"],
                ],
            ),
            (
                "backpacks",
                ["Backpacks", "Rucksäcke", "Sacs à dos"],
                &[
                    ["daypack", "Tagesrucksack", "sac à dos de jour"],
                    ["trekking backpack", "Trekkingrucksack", "sac de trekking"],
                ],
            ),
            (
                "sleeping-bags",
                ["Sleeping bags", "Schlafsäcke", "Sacs de couchage"],
                &[["sleeping bag", "Schlafsack", "sac de couchage"]],
            ),
        ],
    ),
    (
        "kitchen",
        ["Kitchen", "Küche", "Cuisine"],
        &[
            (
                "cookware",
                ["Cookware", "Kochgeschirr", "Batterie de cuisine"],
                &[
                    ["frying pan", "Bratpfanne", "poêle"],
                    ["saucepan", "Kochtopf", "casserole"],
                ],
            ),
            (
                "knives",
                ["Knives", "Messer", "Couteaux"],
                &[
                    ["chef's knife", "Kochmesser", "couteau de chef"],
                    ["bread knife", "Brotmesser", "couteau à pain"],
                ],
            ),
            (
                "coffee",
                ["Coffee", "Kaffee", "Café"],
                &[
                    ["espresso maker", "Espressokocher", "cafetière italienne"],
                    ["coffee grinder", "Kaffeemühle", "moulin à café"],
                ],
            ),
        ],
    ),
    (
        "electronics",
        ["Electronics", "Elektronik", "Électronique"],
        &[
            (
                "headphones",
                ["Headphones", "Kopfhörer", "Casques"],
                &[
                    [
                        "wireless headphones",
                        "kabellose Kopfhörer",
                        "casque sans fil",
                    ],
                    ["earbuds", "Ohrhörer", "écouteurs"],
                ],
            ),
            (
                "speakers",
                ["Speakers", "Lautsprecher", "Enceintes"],
                &[[
                    "bluetooth speaker",
                    "Bluetooth-Lautsprecher",
                    "enceinte bluetooth",
                ]],
            ),
            (
                "chargers",
                ["Chargers", "Ladegeräte", "Chargeurs"],
                &[
                    ["power bank", "Powerbank", "batterie externe"],
                    ["usb charger", "USB-Ladegerät", "chargeur usb"],
                ],
            ),
        ],
    ),
];

const STYLES: &[Word] = &[
    ["Lightweight", "Leichter", "Léger"],
    ["Classic", "Klassischer", "Classique"],
    ["Compact", "Kompakter", "Compact"],
    ["Premium", "Premium", "Premium"],
    ["Everyday", "Alltags", "Quotidien"],
    ["Waterproof", "Wasserdichter", "Imperméable"],
];

const COLOURS: &[Word] = &[
    ["black", "schwarz", "noir"],
    ["navy", "marineblau", "bleu marine"],
    ["green", "grün", "vert"],
    ["red", "rot", "rouge"],
    ["grey", "grau", "gris"],
    ["sand", "sandfarben", "sable"],
];

const BRANDS: &[&str] = &[
    "Alpenglow",
    "Northwind",
    "Kestrel",
    "Fjellmark",
    "Brightwater",
    "Cedar & Co",
    "Lumen",
    "Tidewell",
];

/// Products per noun; with the tree above, about 300 in all.
const PER_NOUN: usize = 11;

/// A small deterministic generator (SplitMix64), so the demo catalog is the same every time.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// Creates the demo catalog; returns how many products it made.
pub async fn demo(handler: &CatalogHandler) -> shopmesh_kit::Result<usize> {
    let mut dice = Dice(42);
    let mut made = 0;
    for (position, (slug, names, leaves)) in TREE.iter().enumerate() {
        let top = handler
            .create_category_record(category(slug, names, "", position))
            .await?;
        for (position, (slug, names, nouns)) in leaves.iter().enumerate() {
            let leaf = handler
                .create_category_record(category(slug, names, &top.id, position))
                .await?;
            for noun in *nouns {
                for _ in 0..PER_NOUN {
                    made += 1;
                    handler
                        .create(product(&mut dice, noun, &leaf.id, made))
                        .await?;
                }
            }
        }
    }
    Ok(made)
}

fn category(slug: &str, names: &Word, parent_id: &str, position: usize) -> CreateCategoryRequest {
    CreateCategoryRequest {
        parent_id: parent_id.to_owned(),
        slug: slug.to_owned(),
        name: names[0].to_owned(),
        translations: HashMap::from([
            ("de".to_owned(), names[1].to_owned()),
            ("fr".to_owned(), names[2].to_owned()),
        ]),
        position: position as i32,
    }
}

fn product(dice: &mut Dice, noun: &Word, category_id: &str, serial: usize) -> CreateProductRequest {
    let style = dice.pick(STYLES);
    let colour = dice.pick(COLOURS);
    let brand = *dice.pick(BRANDS);
    let price = 100 + (dice.next() % 49_901) as i64;
    let stock = (dice.next() % 60) as i32;
    let title = |language: usize| match language {
        // German and French put the noun first where English puts it last.
        0 => format!("{brand} {} {}", style[0], noun[0]),
        1 => format!("{brand} {} {}", style[1], noun[1]),
        _ => format!("{brand} {} {}", noun[2], style[2].to_lowercase()),
    };
    let description = |language: usize| match language {
        0 => format!(
            "A {} {} in {} by {brand}, made to last and easy to care for.",
            style[0].to_lowercase(),
            noun[0],
            colour[0]
        ),
        1 => format!(
            "{} in {} von {brand}, langlebig und pflegeleicht.",
            title(1),
            colour[1]
        ),
        _ => format!(
            "{} {} de {brand}, durable et facile d'entretien.",
            title(2),
            colour[2]
        ),
    };
    CreateProductRequest {
        sku: format!("DEMO-{serial:05}"),
        title: title(0),
        description: description(0),
        price: Some(Money {
            currency_code: "EUR".into(),
            amount_minor: price,
        }),
        category_id: category_id.to_owned(),
        attributes: HashMap::from([
            ("brand".to_owned(), brand.to_owned()),
            ("colour".to_owned(), colour[0].to_owned()),
        ]),
        stock,
        translations: HashMap::from([
            (
                "de".to_owned(),
                ProductTranslation {
                    title: title(1),
                    description: description(1),
                },
            ),
            (
                "fr".to_owned(),
                ProductTranslation {
                    title: title(2),
                    description: description(2),
                },
            ),
        ]),
    }
}

/// Adds `count` generated products (and their categories) for benchmarks, through the same
/// writes and events as the API. Products whose SKU exists are skipped, so a repeated run adds
/// nothing. Calls `progress(done)` as it goes; returns how many products it added.
pub async fn generated(
    handler: &CatalogHandler,
    count: u64,
    seed: u64,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let catalog = shopmesh_search::generate::Catalog::new(seed);
    let existing = handler.store().categories().await?;
    for category in catalog.categories() {
        let id = Uuid::parse_str(&category.id)?;
        if existing.iter().any(|c| c.id == id) {
            continue;
        }
        let english = category.names.get("en").cloned().unwrap_or_default();
        let record = CategoryRecord {
            id,
            parent_id: category
                .parent_id
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()?,
            slug: format!("{}-{}", slug(&english), &category.id[..8]),
            name: english,
            translations: category
                .names
                .iter()
                .filter(|(locale, _)| locale.as_str() != "en")
                .map(|(l, n)| (l.clone(), n.clone()))
                .collect(),
            position: 0,
        };
        match handler.store().create_category(&record).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(other) => return Err(other.into()),
        }
    }
    let mut added = 0;
    for (n, product) in catalog.products(count).enumerate() {
        let default = product.default_locale.clone();
        let now = now_ms();
        let record = ProductRecord {
            id: Uuid::parse_str(&product.id)?,
            sku: product.sku,
            category_id: product
                .category_path
                .last()
                .map(|id| Uuid::parse_str(id))
                .transpose()?,
            currency: product.currency,
            amount_minor: product.price_minor,
            stock: product.stock,
            rating_average: product.rating_average,
            rating_count: product.rating_count,
            text: ProductText {
                title: product.titles.get(&default).cloned().unwrap_or_default(),
                description: product
                    .descriptions
                    .get(&default)
                    .cloned()
                    .unwrap_or_default(),
                attributes: product.attributes,
                translations: product
                    .titles
                    .iter()
                    .filter(|(locale, _)| **locale != default)
                    .map(|(locale, title)| {
                        let description = product
                            .descriptions
                            .get(locale)
                            .cloned()
                            .unwrap_or_default();
                        (locale.clone(), (title.clone(), description))
                    })
                    .collect(),
            },
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
        };
        if handler.import(record).await? {
            added += 1;
        }
        progress(n as u64 + 1);
    }
    Ok(added)
}

/// `Running shoes` → `running-shoes`.
fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_owned()
}
