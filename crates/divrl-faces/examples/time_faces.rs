//! Time per image of the gender and age networks on the 100 LFW face crops (after
//! scripts/setup-faces.sh):
//!     cargo run --release -p divrl-faces --example time_faces [REPEATS]
use std::time::Instant;

use divrl_faces::{FaceAttributes, FaceImage, LFW_SUBSET_FACES, LFW_SUBSET_FILE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let dir = divrl_faces::default_dir();
    let t = Instant::now();
    let m = FaceAttributes::load(&dir)?;
    println!(
        "load + optimise both graphs: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let f = npyz::NpyFile::new(std::io::BufReader::new(std::fs::File::open(
        dir.join(LFW_SUBSET_FILE),
    )?))?;
    let v: Vec<f64> = f.into_vec()?;
    let faces: Vec<FaceImage> = v
        .chunks_exact(625)
        .take(LFW_SUBSET_FACES)
        .map(|c| FaceImage::new(25, 25, 1, c.iter().map(|&x| x as f32).collect()))
        .collect::<Result<_, _>>()?;
    let n = (faces.len() * repeats) as f64;
    let t = Instant::now();
    for _ in 0..repeats {
        m.gender_probabilities(&faces)?;
    }
    let g = t.elapsed().as_secs_f64() / n;
    let t = Instant::now();
    for _ in 0..repeats {
        m.age_probabilities(&faces)?;
    }
    let a = t.elapsed().as_secs_f64() / n;
    println!(
        "{} images x {repeats}: gender {:.2} ms/image, age {:.2} ms/image (batches of 32, incl. resize)",
        faces.len(),
        g * 1e3,
        a * 1e3
    );
    Ok(())
}
