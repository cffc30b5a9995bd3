//! A deterministic catalog generator: a two-level category tree and products with titles and
//! descriptions in English, German and French, brands, colours, materials, sizes, prices
//! between 1.00 and 500.00, stock, ratings and creation times.
//!
//! The same seed and product number always give the same product, on every machine and build,
//! so benchmarks and demo catalogs are reproducible, and any product can be made on its own
//! (`Catalog::product(n)`) without generating the ones before it.
//!
//! ```
//! use shopmesh_search::generate::Catalog;
//!
//! let catalog = Catalog::new(7);
//! let first: Vec<_> = catalog.products(3).collect();
//! assert_eq!(first[1], catalog.product(1));
//! assert!(catalog.categories().iter().any(|c| c.id == first[0].category_path[0]));
//! ```

use std::collections::BTreeMap;

use crate::IndexedProduct;

/// The locales every generated category has, and most products (about 10 % lack French).
pub const LOCALES: [&str; 3] = ["en", "de", "fr"];

/// A generated category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    /// A UUID, the same for every seed.
    pub id: String,
    /// `None` for a top-level department.
    pub parent_id: Option<String>,
    /// Locale → name.
    pub names: BTreeMap<String, String>,
}

/// A word or phrase in English, German and French.
type Words = [&'static str; 3];

struct Department {
    code: &'static str,
    names: Words,
    sizes: Sizes,
    subcategories: &'static [Subcategory],
}

struct Subcategory {
    names: Words,
    nouns: &'static [Words],
    /// Price range in minor units.
    price: (u64, u64),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sizes {
    None,
    Clothing,
    Shoes,
}

const DEPARTMENTS: &[Department] = &[
    Department {
        code: "ELE",
        names: ["Electronics", "Elektronik", "Électronique"],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Headphones", "Kopfhörer", "Casques audio"],
                nouns: &[
                    ["Headphones", "Kopfhörer", "Casque audio"],
                    ["Earbuds", "Ohrhörer", "Écouteurs"],
                ],
                price: (1_500, 40_000),
            },
            Subcategory {
                names: ["Speakers", "Lautsprecher", "Enceintes"],
                nouns: &[
                    ["Speaker", "Lautsprecher", "Enceinte"],
                    ["Soundbar", "Soundbar", "Barre de son"],
                ],
                price: (2_000, 50_000),
            },
            Subcategory {
                names: [
                    "Cables & Chargers",
                    "Kabel & Ladegeräte",
                    "Câbles et chargeurs",
                ],
                nouns: &[
                    ["Cable", "Kabel", "Câble"],
                    ["Charger", "Ladegerät", "Chargeur"],
                    ["Power Bank", "Powerbank", "Batterie externe"],
                ],
                price: (500, 8_000),
            },
            Subcategory {
                names: ["Cameras", "Kameras", "Appareils photo"],
                nouns: &[
                    ["Camera", "Kamera", "Appareil photo"],
                    ["Action Camera", "Actionkamera", "Caméra sport"],
                ],
                price: (5_000, 50_000),
            },
            Subcategory {
                names: ["Smart Home", "Smart Home", "Maison connectée"],
                nouns: &[
                    ["Smart Plug", "Steckdose", "Prise connectée"],
                    ["Light Bulb", "Glühbirne", "Ampoule"],
                ],
                price: (800, 6_000),
            },
        ],
    },
    Department {
        code: "HOM",
        names: ["Home & Kitchen", "Haus & Küche", "Maison et cuisine"],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Cookware", "Kochgeschirr", "Ustensiles de cuisson"],
                nouns: &[
                    ["Frying Pan", "Bratpfanne", "Poêle"],
                    ["Saucepan", "Kochtopf", "Casserole"],
                ],
                price: (1_500, 20_000),
            },
            Subcategory {
                names: ["Kitchen Appliances", "Küchengeräte", "Électroménager"],
                nouns: &[
                    ["Kettle", "Wasserkocher", "Bouilloire"],
                    ["Toaster", "Toaster", "Grille-pain"],
                    ["Blender", "Mixer", "Mixeur"],
                ],
                price: (2_000, 30_000),
            },
            Subcategory {
                names: ["Lighting", "Beleuchtung", "Éclairage"],
                nouns: &[
                    ["Desk Lamp", "Schreibtischlampe", "Lampe de bureau"],
                    ["Floor Lamp", "Stehlampe", "Lampadaire"],
                ],
                price: (1_500, 25_000),
            },
            Subcategory {
                names: ["Bedding", "Bettwaren", "Linge de lit"],
                nouns: &[
                    ["Duvet", "Bettdecke", "Couette"],
                    ["Pillow", "Kissen", "Oreiller"],
                ],
                price: (1_000, 20_000),
            },
            Subcategory {
                names: ["Storage", "Aufbewahrung", "Rangement"],
                nouns: &[
                    ["Storage Box", "Aufbewahrungsbox", "Boîte de rangement"],
                    ["Shelf", "Regal", "Étagère"],
                ],
                price: (800, 25_000),
            },
        ],
    },
    Department {
        code: "CLO",
        names: ["Clothing", "Bekleidung", "Vêtements"],
        sizes: Sizes::Clothing,
        subcategories: &[
            Subcategory {
                names: ["T-Shirts", "T-Shirts", "T-shirts"],
                nouns: &[["T-Shirt", "T-Shirt", "T-shirt"]],
                price: (900, 4_500),
            },
            Subcategory {
                names: ["Jackets", "Jacken", "Vestes"],
                nouns: &[
                    ["Jacket", "Jacke", "Veste"],
                    ["Raincoat", "Regenjacke", "Imperméable"],
                ],
                price: (4_000, 30_000),
            },
            Subcategory {
                names: ["Trousers", "Hosen", "Pantalons"],
                nouns: &[["Jeans", "Jeans", "Jean"], ["Trousers", "Hose", "Pantalon"]],
                price: (2_500, 15_000),
            },
            Subcategory {
                names: ["Knitwear", "Strickwaren", "Mailles"],
                nouns: &[
                    ["Sweater", "Pullover", "Pull"],
                    ["Hoodie", "Kapuzenpullover", "Sweat à capuche"],
                ],
                price: (2_500, 12_000),
            },
        ],
    },
    Department {
        code: "SHO",
        names: ["Shoes", "Schuhe", "Chaussures"],
        sizes: Sizes::Shoes,
        subcategories: &[
            Subcategory {
                names: ["Running Shoes", "Laufschuhe", "Chaussures de course"],
                nouns: &[["Running Shoes", "Laufschuhe", "Chaussures de course"]],
                price: (5_000, 20_000),
            },
            Subcategory {
                names: ["Boots", "Stiefel", "Bottes"],
                nouns: &[
                    ["Boots", "Stiefel", "Bottes"],
                    ["Hiking Boots", "Wanderschuhe", "Chaussures de randonnée"],
                ],
                price: (6_000, 30_000),
            },
            Subcategory {
                names: ["Sandals", "Sandalen", "Sandales"],
                nouns: &[["Sandals", "Sandalen", "Sandales"]],
                price: (2_000, 9_000),
            },
        ],
    },
    Department {
        code: "SPO",
        names: [
            "Sports & Outdoors",
            "Sport & Freizeit",
            "Sports et plein air",
        ],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Camping", "Camping", "Camping"],
                nouns: &[
                    ["Tent", "Zelt", "Tente"],
                    ["Sleeping Bag", "Schlafsack", "Sac de couchage"],
                ],
                price: (3_000, 45_000),
            },
            Subcategory {
                names: ["Fitness", "Fitness", "Fitness"],
                nouns: &[
                    ["Yoga Mat", "Yogamatte", "Tapis de yoga"],
                    ["Dumbbell", "Hantel", "Haltère"],
                ],
                price: (1_000, 15_000),
            },
            Subcategory {
                names: ["Cycling", "Radsport", "Cyclisme"],
                nouns: &[
                    ["Bicycle Helmet", "Fahrradhelm", "Casque de vélo"],
                    ["Bike Light", "Fahrradlicht", "Éclairage vélo"],
                ],
                price: (1_500, 20_000),
            },
        ],
    },
    Department {
        code: "GAR",
        names: ["Garden", "Garten", "Jardin"],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Garden Tools", "Gartengeräte", "Outils de jardin"],
                nouns: &[
                    ["Garden Hose", "Gartenschlauch", "Tuyau d'arrosage"],
                    ["Pruning Shears", "Gartenschere", "Sécateur"],
                ],
                price: (1_000, 12_000),
            },
            Subcategory {
                names: ["Planters", "Pflanzgefäße", "Jardinières"],
                nouns: &[
                    ["Planter", "Pflanzkübel", "Jardinière"],
                    ["Flower Pot", "Blumentopf", "Pot de fleurs"],
                ],
                price: (500, 10_000),
            },
        ],
    },
    Department {
        code: "TOY",
        names: ["Toys", "Spielzeug", "Jouets"],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Building Sets", "Bausets", "Jeux de construction"],
                nouns: &[["Building Blocks", "Bausteine", "Blocs de construction"]],
                price: (1_000, 20_000),
            },
            Subcategory {
                names: ["Puzzles", "Puzzles", "Puzzles"],
                nouns: &[["Jigsaw Puzzle", "Puzzle", "Puzzle"]],
                price: (700, 5_000),
            },
            Subcategory {
                names: ["Board Games", "Brettspiele", "Jeux de société"],
                nouns: &[["Board Game", "Brettspiel", "Jeu de société"]],
                price: (1_500, 8_000),
            },
        ],
    },
    Department {
        code: "BEA",
        names: ["Beauty", "Beauty", "Beauté"],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Skincare", "Hautpflege", "Soins de la peau"],
                nouns: &[
                    ["Face Cream", "Gesichtscreme", "Crème visage"],
                    ["Serum", "Serum", "Sérum"],
                ],
                price: (500, 9_000),
            },
            Subcategory {
                names: ["Hair Care", "Haarpflege", "Soins des cheveux"],
                nouns: &[
                    ["Shampoo", "Shampoo", "Shampooing"],
                    ["Hair Dryer", "Haartrockner", "Sèche-cheveux"],
                ],
                price: (400, 20_000),
            },
        ],
    },
    Department {
        code: "OFF",
        names: ["Office", "Büro", "Bureau"],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Stationery", "Schreibwaren", "Papeterie"],
                nouns: &[
                    ["Notebook", "Notizbuch", "Carnet"],
                    ["Fountain Pen", "Füllfederhalter", "Stylo plume"],
                ],
                price: (300, 15_000),
            },
            Subcategory {
                names: ["Office Furniture", "Büromöbel", "Mobilier de bureau"],
                nouns: &[
                    ["Office Chair", "Bürostuhl", "Chaise de bureau"],
                    ["Desk", "Schreibtisch", "Bureau"],
                ],
                price: (8_000, 50_000),
            },
        ],
    },
    Department {
        code: "PET",
        names: ["Pet Supplies", "Tierbedarf", "Animalerie"],
        sizes: Sizes::None,
        subcategories: &[
            Subcategory {
                names: ["Dogs", "Hunde", "Chiens"],
                nouns: &[
                    ["Dog Bed", "Hundebett", "Panier pour chien"],
                    ["Dog Leash", "Hundeleine", "Laisse"],
                ],
                price: (800, 15_000),
            },
            Subcategory {
                names: ["Cats", "Katzen", "Chats"],
                nouns: &[
                    ["Cat Tree", "Kratzbaum", "Arbre à chat"],
                    ["Cat Litter", "Katzenstreu", "Litière"],
                ],
                price: (600, 20_000),
            },
        ],
    },
];

const ADJECTIVES: &[Words] = &[
    ["Wireless", "kabellos", "sans fil"],
    ["Portable", "tragbar", "portable"],
    ["Compact", "kompakt", "compact"],
    ["Waterproof", "wasserdicht", "étanche"],
    ["Lightweight", "leicht", "léger"],
    ["Premium", "Premium", "premium"],
    ["Classic", "klassisch", "classique"],
    ["Ergonomic", "ergonomisch", "ergonomique"],
    ["Foldable", "faltbar", "pliable"],
    ["Durable", "robust", "résistant"],
    ["Modern", "modern", "moderne"],
    ["Vintage", "Vintage", "vintage"],
    ["Organic", "Bio", "bio"],
    ["Rechargeable", "wiederaufladbar", "rechargeable"],
    ["Adjustable", "verstellbar", "réglable"],
    ["Soft", "weich", "doux"],
    ["Professional", "professionell", "professionnel"],
    ["Eco-Friendly", "umweltfreundlich", "écologique"],
    ["Insulated", "isoliert", "isolé"],
    ["Silent", "leise", "silencieux"],
];

const COLOURS: &[Words] = &[
    ["black", "schwarz", "noir"],
    ["white", "weiß", "blanc"],
    ["red", "rot", "rouge"],
    ["blue", "blau", "bleu"],
    ["green", "grün", "vert"],
    ["grey", "grau", "gris"],
    ["navy", "marineblau", "bleu marine"],
    ["beige", "beige", "beige"],
    ["yellow", "gelb", "jaune"],
    ["pink", "rosa", "rose"],
    ["brown", "braun", "marron"],
    ["silver", "silber", "argenté"],
    ["orange", "orange", "orange"],
    ["purple", "lila", "violet"],
];

const MATERIALS: &[Words] = &[
    ["cotton", "Baumwolle", "coton"],
    ["wool", "Wolle", "laine"],
    ["leather", "Leder", "cuir"],
    ["steel", "Stahl", "acier"],
    ["aluminium", "Aluminium", "aluminium"],
    ["bamboo", "Bambus", "bambou"],
    ["oak", "Eiche", "chêne"],
    ["glass", "Glas", "verre"],
    ["ceramic", "Keramik", "céramique"],
    [
        "recycled plastic",
        "Recyclingkunststoff",
        "plastique recyclé",
    ],
    ["linen", "Leinen", "lin"],
    ["silicone", "Silikon", "silicone"],
];

const BRANDS: &[&str] = &[
    "Nordlys",
    "Aurora",
    "Kestrel",
    "Brightwave",
    "Vantage",
    "Solenne",
    "Harbor & Pine",
    "Ironbark",
    "Lumio",
    "Velora",
    "Tidewell",
    "Fjordline",
    "Cobalt",
    "Maple Row",
    "Stonegate",
    "Quillon",
    "Bramble",
    "Zephyra",
    "Orchard Lane",
    "Halcyon",
    "Tessel",
    "Ardent",
    "Peregrine",
    "Copperleaf",
    "Willowmere",
    "Northfold",
    "Bluecrest",
    "Sable",
    "Lindqvist",
    "Montclair",
    "Rivoli",
    "Kaskade",
    "Alpenglow",
    "Tundra",
    "Meridian",
    "Oakhurst",
    "Seabright",
    "Verano",
    "Wrenfield",
    "Ember",
];

const MODELS: &[&str] = &[
    "", "Pro", "Max", "Mini", "Plus", "Air", "Lite", "II", "S", "X", "One", "Go",
];

const CLOTHING_SIZES: &[&str] = &["XS", "S", "M", "L", "XL", "XXL"];
const SHOE_SIZES: &[&str] = &[
    "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
];

/// Description sentences per locale. `{noun}`, `{brand}`, `{adj}`, `{adj2}`, `{material}` and
/// `{colour}` are filled in.
const SENTENCES: [&[&str]; 3] = [
    &[
        "The {brand} {noun} is {adj} and built to last.",
        "Made from {material}, it feels {adj2} in everyday use.",
        "Available in {colour}.",
        "Ideal for home, travel and the office.",
        "Easy to clean and simple to set up.",
        "Backed by a two-year warranty.",
        "Designed in Scandinavia with attention to every detail.",
        "A great gift for friends and family.",
        "Thousands of customers rate it among the best in its class.",
        "Its {adj} design fits any space.",
        "Every {noun} is tested before it leaves our workshop.",
        "Pairs well with the rest of the {brand} range.",
    ],
    &[
        "Der {noun} von {brand} ist {adj} und langlebig.",
        "Aus {material} gefertigt und im Alltag {adj2}.",
        "Erhältlich in {colour}.",
        "Ideal für Zuhause, Reisen und Büro.",
        "Leicht zu reinigen und schnell eingerichtet.",
        "Mit zwei Jahren Garantie.",
        "In Skandinavien entworfen, mit Liebe zum Detail.",
        "Ein tolles Geschenk für Freunde und Familie.",
        "Tausende Kunden zählen ihn zu den besten seiner Klasse.",
        "Das Design ist {adj} und passt in jeden Raum.",
        "Jedes Stück wird geprüft, bevor es unsere Werkstatt verlässt.",
        "Passt gut zum übrigen Sortiment von {brand}.",
    ],
    &[
        "Le {noun} {brand} est {adj} et conçu pour durer.",
        "Fabriqué en {material}, il reste {adj2} au quotidien.",
        "Disponible en {colour}.",
        "Idéal pour la maison, les voyages et le bureau.",
        "Facile à nettoyer et simple à installer.",
        "Garanti deux ans.",
        "Conçu en Scandinavie avec le souci du détail.",
        "Un beau cadeau pour les amis et la famille.",
        "Des milliers de clients le classent parmi les meilleurs de sa catégorie.",
        "Son design {adj} s'adapte à tous les espaces.",
        "Chaque pièce est contrôlée avant de quitter notre atelier.",
        "Se marie bien avec le reste de la gamme {brand}.",
    ],
];

/// 2023-01-01T00:00:00Z: products are created over the three years after it.
const CREATED_FROM_MS: i64 = 1_672_531_200_000;
const CREATED_SPAN_MS: u64 = 3 * 365 * 24 * 3_600 * 1_000;

/// A generated catalog: categories, and products numbered from 0.
#[derive(Clone, Debug)]
pub struct Catalog {
    seed: u64,
    categories: Vec<Category>,
    /// Per leaf: (department index, subcategory index, department id, leaf id).
    leaves: Vec<(usize, usize, String, String)>,
}

impl Catalog {
    /// The catalog of `seed`. The categories do not depend on the seed.
    pub fn new(seed: u64) -> Catalog {
        let mut categories = Vec::new();
        let mut leaves = Vec::new();
        for (d, department) in DEPARTMENTS.iter().enumerate() {
            let department_id = uuid_from(fnv(department.names[0].as_bytes()), 0xca7e);
            categories.push(Category {
                id: department_id.clone(),
                parent_id: None,
                names: names(department.names),
            });
            for (s, subcategory) in department.subcategories.iter().enumerate() {
                let key = format!("{}/{}", department.names[0], subcategory.names[0]);
                let id = uuid_from(fnv(key.as_bytes()), 0xca7e);
                categories.push(Category {
                    id: id.clone(),
                    parent_id: Some(department_id.clone()),
                    names: names(subcategory.names),
                });
                leaves.push((d, s, department_id.clone(), id));
            }
        }
        Catalog {
            seed,
            categories,
            leaves,
        }
    }

    /// Every category, each department before its subcategories.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// Products `0..count`.
    pub fn products(&self, count: u64) -> impl Iterator<Item = IndexedProduct> + '_ {
        (0..count).map(|n| self.product(n))
    }

    /// Product number `n`.
    pub fn product(&self, n: u64) -> IndexedProduct {
        // Each product's stream starts at a hashed point, so streams do not overlap.
        let mut rng = SplitMix(mix(mix(self.seed) ^ n));
        let (d, s, department_id, leaf_id) = &self.leaves[rng.below(self.leaves.len())];
        let department = &DEPARTMENTS[*d];
        let subcategory = &department.subcategories[*s];
        let noun = *rng.pick(subcategory.nouns);
        let adjective = *rng.pick(ADJECTIVES);
        let adjective2 = *rng.pick(ADJECTIVES);
        let colour = *rng.pick(COLOURS);
        let material = *rng.pick(MATERIALS);
        let brand = *rng.pick(BRANDS);
        let model = match *rng.pick(MODELS) {
            "" => format!("{}", 100 + rng.below(900)),
            name => format!("{name} {}", 1 + rng.below(9)),
        };
        let with_french = rng.below(10) != 0;

        let mut titles = BTreeMap::new();
        let mut descriptions = BTreeMap::new();
        for (l, locale) in LOCALES.iter().enumerate() {
            if l == 2 && !with_french {
                continue;
            }
            let title = match l {
                0 => format!("{brand} {} {} {} {model}", adjective[0], colour[0], noun[0]),
                1 => format!(
                    "{brand} {} {} {model}, {}",
                    noun[1], adjective[1], colour[1]
                ),
                _ => format!(
                    "{} {} {brand} {model} – {}",
                    noun[2], adjective[2], colour[2]
                ),
            };
            titles.insert((*locale).to_owned(), title);
            let sentences = SENTENCES[l];
            let count = 3 + rng.below(4);
            let mut description = Vec::with_capacity(count);
            for _ in 0..count {
                let sentence = rng
                    .pick(sentences)
                    .replace("{noun}", &noun[l].to_lowercase())
                    .replace("{brand}", brand)
                    .replace("{adj2}", &adjective2[l].to_lowercase())
                    .replace("{adj}", &adjective[l].to_lowercase())
                    .replace("{material}", material[l])
                    .replace("{colour}", colour[l]);
                description.push(sentence);
            }
            descriptions.insert((*locale).to_owned(), description.join(" "));
        }

        let mut attributes = BTreeMap::new();
        attributes.insert("brand".to_owned(), brand.to_owned());
        attributes.insert("colour".to_owned(), colour[0].to_owned());
        attributes.insert("material".to_owned(), material[0].to_owned());
        let sizes = match department.sizes {
            Sizes::None => None,
            Sizes::Clothing => Some(CLOTHING_SIZES),
            Sizes::Shoes => Some(SHOE_SIZES),
        };
        if let Some(sizes) = sizes {
            attributes.insert("size".to_owned(), (*rng.pick(sizes)).to_owned());
        }

        let (low, high) = subcategory.price;
        // Log-uniform between the bounds, ending in 99 or 00.
        let ratio = (high as f64 / low as f64).powf(rng.unit());
        let raw = (low as f64 * ratio) as i64;
        let price_minor = if raw >= 1_000 {
            (raw / 100) * 100 + 99
        } else {
            (raw / 10) * 10
        }
        .clamp(100, 50_000);

        let stock = if rng.below(100) < 15 {
            0
        } else {
            1 + rng.below(500) as i32
        };
        let (rating_average, rating_count) = if rng.below(100) < 20 {
            (0.0, 0)
        } else {
            // Skewed towards good ratings, one decimal.
            let average = 5.0 - 4.0 * rng.unit() * rng.unit();
            ((average * 10.0).round() / 10.0, 1 + rng.below(2_000) as i32)
        };

        IndexedProduct {
            id: uuid_from(rng.next(), rng.next() as u16),
            sku: format!("{}-{:02}-{n:08}", department.code, s + 1),
            titles,
            descriptions,
            default_locale: LOCALES[0].to_owned(),
            attributes,
            category_path: vec![department_id.clone(), leaf_id.clone()],
            price_minor,
            currency: "EUR".to_owned(),
            stock,
            rating_average,
            rating_count,
            created_at_ms: CREATED_FROM_MS + (rng.next() % CREATED_SPAN_MS) as i64,
            version: 1,
        }
    }
}

fn names(words: Words) -> BTreeMap<String, String> {
    LOCALES
        .iter()
        .zip(words)
        .map(|(locale, name)| ((*locale).to_owned(), name.to_owned()))
        .collect()
}

/// A version-4-shaped UUID from 64 + 16 bits.
fn uuid_from(high: u64, low: u16) -> String {
    let mixed = SplitMix(high ^ u64::from(low)).next();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        0x8000 | (mixed >> 48 & 0x3fff),
        mixed & 0xffff_ffff_ffff
    )
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64: tiny, fast, and the same everywhere.
struct SplitMix(u64);

/// SplitMix64's finaliser: a bijection that scatters nearby inputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn is_deterministic_and_random_access() {
        let catalog = Catalog::new(42);
        let products: Vec<_> = catalog.products(50).collect();
        assert_eq!(products[17], Catalog::new(42).product(17));
        assert_ne!(products[17], Catalog::new(43).product(17));
        assert_eq!(products[17].id, catalog.product(17).id);
    }

    #[test]
    fn products_are_plausible() {
        let catalog = Catalog::new(1);
        let leaf_ids: HashSet<&str> = catalog
            .categories()
            .iter()
            .filter(|category| category.parent_id.is_some())
            .map(|category| category.id.as_str())
            .collect();
        let mut ids = HashSet::new();
        let mut skus = HashSet::new();
        let mut without_french = 0;
        for product in catalog.products(2_000) {
            assert!(ids.insert(product.id.clone()), "duplicate id");
            assert!(skus.insert(product.sku.clone()), "duplicate sku");
            assert_eq!(product.id.len(), 36);
            assert!((100..=50_000).contains(&product.price_minor));
            assert!((0.0..=5.0).contains(&product.rating_average));
            assert!(product.titles.contains_key("en") && product.titles.contains_key("de"));
            without_french += usize::from(!product.titles.contains_key("fr"));
            let words = product.descriptions["en"].split_whitespace().count();
            assert!((10..=70).contains(&words), "{words} words");
            assert!(leaf_ids.contains(product.category_path[1].as_str()));
            assert!(product.attributes.contains_key("brand"));
        }
        assert!((100..300).contains(&without_french), "{without_french}");
    }

    #[test]
    fn categories_form_a_two_level_tree() {
        let catalog = Catalog::new(0);
        let ids: HashSet<&str> = catalog.categories().iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), catalog.categories().len());
        for category in catalog.categories() {
            assert_eq!(category.names.len(), 3);
            if let Some(parent) = &category.parent_id {
                assert!(ids.contains(parent.as_str()));
            }
        }
    }
}
