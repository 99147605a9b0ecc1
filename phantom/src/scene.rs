//! Anatomy of the standard echo views as soft-edged primitives (ellipses, capsules) in a
//! "heart frame": centimetres, probe at the origin, `y` = depth, `x` = lateral (screen right).
//!
//! Each view is painted back to front: envelope and pericardium, myocardium, then cavities and
//! valves. A primitive carries an echogenicity level (linear amplitude before log compression)
//! and a [`Label`] used for label maps and ground-truth tests.

use super::heart::{HeartParams, HeartState, KAPPA};
use super::{Label, View};
use crate::dmath;

// Echogenicity (linear amplitude; 1 = brightest specular reflector).
pub(crate) const BLOOD: f32 = 0.006;
pub(crate) const MYO: f32 = 0.16;
pub(crate) const PERI: f32 = 0.8;
pub(crate) const VALVE: f32 = 0.3;
pub(crate) const FAT: f32 = 0.06;
pub(crate) const LUNG: f32 = 0.035;
pub(crate) const CHEST: f32 = 0.12;
pub(crate) const LIVER: f32 = 0.11;
pub(crate) const ATRIAL_WALL: f32 = 0.13;
pub(crate) const VESSEL_WALL: f32 = 0.3;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    /// `(u/a)² + (v/b)² <= 1` and `u <= cut`, with `(u, v)` the point in the ellipse frame.
    Ellipse {
        cx: f32,
        cy: f32,
        cos: f32,
        sin: f32,
        a: f32,
        b: f32,
        cut: f32,
    },
    /// Points within `r` of the segment `p0 → p1`.
    Capsule {
        x0: f32,
        y0: f32,
        dx: f32,
        dy: f32,
        inv_len2: f32,
        r: f32,
    },
}

/// One soft-edged primitive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prim {
    pub shape: Shape,
    pub level: f32,
    /// Edge width in cm (the blend goes from 1 to 0 over this distance).
    pub edge: f32,
    pub label: Label,
}

impl Prim {
    /// Signed distance (approximate, cm) from the boundary; negative inside.
    #[inline]
    pub(crate) fn distance(&self, x: f32, y: f32) -> f32 {
        match self.shape {
            Shape::Ellipse {
                cx,
                cy,
                cos,
                sin,
                a,
                b,
                cut,
            } => {
                let px = x - cx;
                let py = y - cy;
                let u = px * cos + py * sin;
                let v = -px * sin + py * cos;
                let q = (u * u) / (a * a) + (v * v) / (b * b);
                let r = (u * u + v * v).sqrt();
                let rho = q.sqrt();
                let d_ell = if rho > 1e-6 {
                    r * (1.0 - 1.0 / rho)
                } else {
                    -a.min(b)
                };
                d_ell.max(u - cut)
            }
            Shape::Capsule {
                x0,
                y0,
                dx,
                dy,
                inv_len2,
                r,
            } => {
                let px = x - x0;
                let py = y - y0;
                let t = ((px * dx + py * dy) * inv_len2).clamp(0.0, 1.0);
                let ex = px - t * dx;
                let ey = py - t * dy;
                (ex * ex + ey * ey).sqrt() - r
            }
        }
    }

    /// Coverage in `[0, 1]` at a point, the boundary moved outward by `jitter` cm for blood
    /// pools (irregular endocardium) and by a third of it for everything else.
    #[inline]
    pub(crate) fn alpha_rough(&self, x: f32, y: f32, jitter: f32) -> f32 {
        let j = if self.level <= BLOOD {
            jitter
        } else {
            0.33 * jitter
        };
        (0.5 - (self.distance(x, y) + j) / self.edge).clamp(0.0, 1.0)
    }

    /// Axis-aligned bounds `[x0, y0, x1, y1]` (cm) outside which `alpha` is 0.
    pub(crate) fn bounds(&self) -> [f32; 4] {
        let m = 0.5 * self.edge + super::raster::MAX_JITTER;
        match self.shape {
            Shape::Ellipse {
                cx,
                cy,
                cos,
                sin,
                a,
                b,
                ..
            } => {
                let hx = ((a * cos).powi(2) + (b * sin).powi(2)).sqrt() + m;
                let hy = ((a * sin).powi(2) + (b * cos).powi(2)).sqrt() + m;
                [cx - hx, cy - hy, cx + hx, cy + hy]
            }
            Shape::Capsule {
                x0, y0, dx, dy, r, ..
            } => {
                let (x1, y1) = (x0 + dx, y0 + dy);
                [
                    x0.min(x1) - r - m,
                    y0.min(y1) - r - m,
                    x0.max(x1) + r + m,
                    y0.max(y1) + r + m,
                ]
            }
        }
    }
}

/// A rigid placement (rotation by `angle` about the origin, then translation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    cos: f64,
    sin: f64,
    tx: f64,
    ty: f64,
    angle: f64,
}

impl Place {
    pub(crate) fn new(angle: f64, tx: f64, ty: f64) -> Self {
        let (sin, cos) = dmath::sin_cos(angle);
        Self {
            cos,
            sin,
            tx,
            ty,
            angle,
        }
    }

    fn point(&self, p: (f64, f64)) -> (f64, f64) {
        (
            self.cos * p.0 - self.sin * p.1 + self.tx,
            self.sin * p.0 + self.cos * p.1 + self.ty,
        )
    }
}

/// Builds primitives in a local frame and places them in the heart frame.
pub(crate) struct Painter<'a> {
    out: &'a mut Vec<Prim>,
    place: Place,
}

impl<'a> Painter<'a> {
    pub(crate) fn new(out: &'a mut Vec<Prim>, place: Place) -> Self {
        Self { out, place }
    }

    /// Ellipse centred at `c`, long axis `a` along direction `angle`, truncated at `u <= cut`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ellipse(
        &mut self,
        c: (f64, f64),
        angle: f64,
        a: f64,
        b: f64,
        cut: f64,
        level: f32,
        edge: f64,
        label: Label,
    ) {
        let (cx, cy) = self.place.point(c);
        let (sin, cos) = dmath::sin_cos(angle + self.place.angle);
        self.out.push(Prim {
            shape: Shape::Ellipse {
                cx: cx as f32,
                cy: cy as f32,
                cos: cos as f32,
                sin: sin as f32,
                a: a.max(0.01) as f32,
                b: b.max(0.01) as f32,
                cut: cut as f32,
            },
            level,
            edge: edge as f32,
            label,
        });
    }

    pub(crate) fn circle(&mut self, c: (f64, f64), r: f64, level: f32, edge: f64, label: Label) {
        self.ellipse(c, 0.0, r, r, f64::INFINITY, level, edge, label);
    }

    pub(crate) fn capsule(
        &mut self,
        p0: (f64, f64),
        p1: (f64, f64),
        r: f64,
        level: f32,
        edge: f64,
        label: Label,
    ) {
        let (x0, y0) = self.place.point(p0);
        let (x1, y1) = self.place.point(p1);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-9);
        self.out.push(Prim {
            shape: Shape::Capsule {
                x0: x0 as f32,
                y0: y0 as f32,
                dx: dx as f32,
                dy: dy as f32,
                inv_len2: (1.0 / len2) as f32,
                r: r.max(0.01) as f32,
            },
            level,
            edge: edge as f32,
            label,
        });
    }

    /// Where a local point lands in the heart frame.
    pub(crate) fn to_heart(&self, p: (f64, f64)) -> (f64, f64) {
        self.place.point(p)
    }
}

/// Everything the rasteriser needs for one instant of one view.
pub(crate) struct Scene {
    pub prims: Vec<Prim>,
    /// Level outside every primitive.
    pub background: f32,
    /// LV centre in the heart frame: speckle is warped about it with the contraction.
    pub lv_centre: (f32, f32),
    /// Radial speckle scale at the LV (`b_ed / b` - 1).
    pub warp: f32,
}

fn add(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (a.0 + b.0, a.1 + b.1)
}

fn scale(a: (f64, f64), s: f64) -> (f64, f64) {
    (a.0 * s, a.1 * s)
}

fn dir(angle: f64) -> (f64, f64) {
    let (s, c) = dmath::sin_cos(angle);
    (c, s)
}

/// Per-video anatomical variation that does not belong to the patient (probe placement).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Depth of the LV apex (apical views) or of the anterior RV wall (parasternal), cm.
    pub heart_depth: f64,
    /// Extra rotation of the heart in the view, radians (foreshortening / rotation).
    pub heart_tilt: f64,
}

/// Builds the scene of `view` at the heart state `st`.
pub(crate) fn build(view: View, h: &HeartParams, st: &HeartState, layout: &Layout) -> Scene {
    let mut prims = Vec::with_capacity(48);
    let (background, lv_centre) = match view {
        View::A4c => {
            chest_wall(&mut prims, layout.heart_depth - 0.4);
            let place = Place::new(layout.heart_tilt, 0.0, layout.heart_depth);
            let c = apical(&mut prims, place, h, st, Apical::FourChamber);
            (LUNG, c)
        }
        View::A2c => {
            chest_wall(&mut prims, layout.heart_depth - 0.4);
            let place = Place::new(layout.heart_tilt, 0.0, layout.heart_depth);
            let c = apical(&mut prims, place, h, st, Apical::TwoChamber);
            (LUNG, c)
        }
        View::A3c => {
            chest_wall(&mut prims, layout.heart_depth - 0.4);
            let place = Place::new(layout.heart_tilt, 0.0, layout.heart_depth);
            let c = apical(&mut prims, place, h, st, Apical::ThreeChamber);
            (LUNG, c)
        }
        View::Subcostal => {
            liver(&mut prims, layout.heart_depth);
            // heart long axis pointing to the screen right and up, RV next to the liver
            let angle = 1.22 + layout.heart_tilt;
            let place = Place::new(angle, 3.2, layout.heart_depth + 1.0);
            let c = apical(&mut prims, place, h, st, Apical::FourChamber);
            (LUNG, c)
        }
        View::Plax => {
            chest_wall(&mut prims, layout.heart_depth - 0.6);
            let c = plax(&mut prims, h, st, layout);
            (LUNG, c)
        }
        View::Psax => {
            chest_wall(&mut prims, layout.heart_depth - 0.6);
            let c = psax(&mut prims, h, st, layout);
            (LUNG, c)
        }
    };
    let warp = (st.lv_b_ed / st.lv_b - 1.0) as f32;
    Scene {
        prims,
        background,
        lv_centre: (lv_centre.0 as f32, lv_centre.1 as f32),
        warp,
    }
}

fn chest_wall(out: &mut Vec<Prim>, bottom: f64) {
    let mut p = Painter::new(out, Place::new(0.0, 0.0, 0.0));
    let bottom = bottom.max(0.8);
    // soft tissue band, with two fascia lines
    p.ellipse(
        (0.0, 0.0),
        0.0,
        30.0,
        bottom,
        f64::INFINITY,
        CHEST,
        0.6,
        Label::Tissue,
    );
    p.capsule(
        (-30.0, 0.35 * bottom),
        (30.0, 0.33 * bottom),
        0.06,
        0.5,
        0.12,
        Label::Tissue,
    );
    p.capsule(
        (-30.0, 0.7 * bottom),
        (30.0, 0.74 * bottom),
        0.08,
        0.45,
        0.15,
        Label::Tissue,
    );
}

fn liver(out: &mut Vec<Prim>, heart_depth: f64) {
    let mut p = Painter::new(out, Place::new(0.0, 0.0, 0.0));
    p.ellipse(
        (0.0, 0.0),
        0.0,
        30.0,
        0.8,
        f64::INFINITY,
        CHEST,
        0.4,
        Label::Tissue,
    );
    p.ellipse(
        (-1.0, 0.9 + 0.5 * heart_depth),
        -0.15,
        12.0,
        0.55 * heart_depth,
        f64::INFINITY,
        LIVER,
        0.5,
        Label::Liver,
    );
    // hepatic veins
    for &(x, y, r) in &[(-3.5, 0.45, 0.55), (-1.2, 0.62, 0.4), (1.8, 0.5, 0.3)] {
        let c = (x, y * heart_depth);
        p.circle(c, r + 0.12, VESSEL_WALL, 0.15, Label::Vessel);
        p.circle(c, r, BLOOD, 0.15, Label::Vessel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the views' own names
enum Apical {
    FourChamber,
    TwoChamber,
    ThreeChamber,
}

/// Apical heart in its local frame: LV apex at the origin, long axis along +y, LV to +x.
/// Returns the LV centre in the heart frame.
fn apical(
    out: &mut Vec<Prim>,
    place: Place,
    h: &HeartParams,
    st: &HeartState,
    kind: Apical,
) -> (f64, f64) {
    let shift = apical_shift(h, st, kind);
    let place = Place::new(
        place.angle,
        place.tx - shift * place.cos,
        place.ty - shift * place.sin,
    );
    let mut p = Painter::new(out, place);
    let g = ApicalGeometry::new(h, st, kind);
    // Back to front: each primitive covers the ones painted before it.
    g.paint_envelope(&mut p, st);
    g.paint_atrial_walls(&mut p);
    g.paint_ventricles(&mut p);
    g.paint_atrial_cavities(&mut p);
    g.paint_valves(&mut p, h, st);
    if kind == Apical::TwoChamber {
        g.paint_two_chamber_extras(&mut p);
    }
    p.to_heart(g.centre)
}

/// How far to move the heart so that the four-chamber view (RV free wall .. LV lateral wall)
/// is centred on the placement origin; the other views are not moved.
fn apical_shift(h: &HeartParams, st: &HeartState, kind: Apical) -> f64 {
    if kind == Apical::FourChamber {
        let sep = 1.05 * h.wall_thickness_cm;
        let dil = st.rv_dilation;
        let right = 0.5 * sep + 1.92 * st.lv_b_ed + h.wall_thickness_cm;
        let left = -(0.5 * sep + 2.0 * 1.55 * dil * 0.95 + 0.45);
        0.5 * (left + right)
    } else {
        0.0
    }
}

/// Where the chambers of an apical view lie at this instant, in the heart's local frame.
struct ApicalGeometry {
    kind: Apical,
    four: bool,
    // LV: semi-axes, wall, axis directions and landmarks
    a: f64,
    b: f64,
    wall: f64,
    sep: f64,
    u_lv: (f64, f64),
    n_lv: (f64, f64),
    lv_x: f64,
    lv_angle: f64,
    apex: (f64, f64),
    centre: (f64, f64),
    base_mid: (f64, f64),
    base_half: f64,
    dil: f64,
    // left atrium
    la_a: f64,
    la_b: f64,
    la_centre: (f64, f64),
    // RV and right atrium (drawn in the four-chamber view only)
    rv_b_ed: f64,
    rv_b: f64,
    rv_a: f64,
    rv_kappa: f64,
    rv_x: f64,
    rv_angle: f64,
    u_rv: (f64, f64),
    rv_centre: (f64, f64),
    rv_base: (f64, f64),
    rv_base_half: f64,
    ra_a: f64,
    ra_b: f64,
    ra_centre: (f64, f64),
}

impl ApicalGeometry {
    fn new(h: &HeartParams, st: &HeartState, kind: Apical) -> Self {
        let (a, b, wall) = (st.lv_a, st.lv_b, st.lv_wall);
        let sep = 1.05 * h.wall_thickness_cm; // septal half-thickness sits on each side
        let lv_tilt = -0.07; // base slightly lateral
        let u_lv = dir(std::f64::consts::FRAC_PI_2 + lv_tilt); // apex -> base
        let n_lv = (u_lv.1, -u_lv.0); // toward the lateral wall... rotate -90deg
        let n_lv = if n_lv.0 < 0.0 {
            (-n_lv.0, -n_lv.1)
        } else {
            n_lv
        };
        // LV placement: fixed apex; the centre moves with the long axis. Lateral offset from
        // the septum is fixed at its end-diastolic value so the septum stays put.
        let lv_x = match kind {
            Apical::FourChamber => 0.5 * sep + st.lv_b_ed * 0.92,
            _ => 0.0,
        };
        let apex = (lv_x - 0.15, 0.0);
        let base_mid = add(apex, scale(u_lv, (1.0 + KAPPA) * a));
        let dil = st.rv_dilation;

        // Geometry of the atria below the annuli.
        let la_a = 2.3 * h.la_size_factor * st.atrial_scale;
        let la_b = 1.9 * h.la_size_factor * st.atrial_scale;

        // RV (4-chamber only)
        let rv_b_ed = 1.55 * dil;
        let rv_b = rv_b_ed * st.rv_scale;
        let rv_a = 0.8 * st.lv_a_ed * (1.0 + 0.08 * (dil - 1.0)) * (1.0 - 0.08 * st.contraction);
        let rv_kappa = 0.6;
        let rv_x = -(0.5 * sep + rv_b_ed * 0.95);
        let rv_apex = (rv_x + 0.2, 0.13 * h.lv_length_cm);
        let rv_angle = std::f64::consts::FRAC_PI_2 + 0.08;
        let u_rv = dir(rv_angle);
        let rv_base = add(rv_apex, scale(u_rv, (1.0 + rv_kappa) * rv_a));
        let ra_a = 2.1 * st.atrial_scale * (1.0 + 0.2 * (dil - 1.0));
        let ra_b = 1.75 * st.atrial_scale * (1.0 + 0.3 * (dil - 1.0));
        Self {
            kind,
            four: kind == Apical::FourChamber,
            a,
            b,
            wall,
            sep,
            u_lv,
            n_lv,
            lv_x,
            lv_angle: std::f64::consts::FRAC_PI_2 + lv_tilt,
            apex,
            centre: add(apex, scale(u_lv, a)),
            base_mid,
            base_half: b * (1.0 - KAPPA * KAPPA).sqrt(),
            dil,
            la_a,
            la_b,
            la_centre: add(base_mid, (0.15, la_a * 0.93)),
            rv_b_ed,
            rv_b,
            rv_a,
            rv_kappa,
            rv_x,
            rv_angle,
            u_rv,
            rv_centre: add(rv_apex, scale(u_rv, rv_a)),
            rv_base,
            rv_base_half: rv_b * (1.0 - rv_kappa * rv_kappa).sqrt(),
            ra_a,
            ra_b,
            ra_centre: add(rv_base, (-0.2, ra_a * 0.92)),
        }
    }

    /// Pericardial envelope around everything, then epicardial fat.
    fn paint_envelope(&self, p: &mut Painter<'_>, st: &HeartState) {
        let bottom = self.la_centre.1 + self.la_a;
        let (lv_x, wall) = (self.lv_x, self.wall);
        let (env_l, env_r) = if self.four {
            (
                self.rv_x - self.rv_b_ed - 1.0,
                lv_x + st.lv_b_ed + wall + 0.9,
            )
        } else {
            (
                lv_x - st.lv_b_ed - wall - 0.9,
                lv_x + st.lv_b_ed + wall + 0.9,
            )
        };
        let env_c = (0.5 * (env_l + env_r), 0.5 * (bottom - 0.6));
        let env_a = 0.5 * (bottom + 0.6) + 0.4;
        let env_b = 0.5 * (env_r - env_l);
        p.ellipse(
            env_c,
            std::f64::consts::FRAC_PI_2,
            env_a + 0.25,
            env_b + 0.25,
            f64::INFINITY,
            PERI * 0.8,
            0.35,
            Label::Pericardium,
        );
        p.ellipse(
            env_c,
            std::f64::consts::FRAC_PI_2,
            env_a,
            env_b,
            f64::INFINITY,
            FAT,
            0.4,
            Label::Tissue,
        );
    }

    /// Atrial walls (their cavities come after the ventricles).
    fn paint_atrial_walls(&self, p: &mut Painter<'_>) {
        p.ellipse(
            self.la_centre,
            std::f64::consts::FRAC_PI_2,
            self.la_a + 0.25,
            self.la_b + 0.25,
            f64::INFINITY,
            ATRIAL_WALL,
            0.3,
            Label::Tissue,
        );
        if self.four {
            p.ellipse(
                self.ra_centre,
                std::f64::consts::FRAC_PI_2,
                self.ra_a + 0.25,
                self.ra_b + 0.25,
                f64::INFINITY,
                ATRIAL_WALL,
                0.3,
                Label::Tissue,
            );
        }
    }

    /// RV and LV myocardium, the septum between them, then both cavities.
    fn paint_ventricles(&self, p: &mut Painter<'_>) {
        let (a, b, wall, sep) = (self.a, self.b, self.wall, self.sep);
        let (rv_a, rv_b, rv_kappa) = (self.rv_a, self.rv_b, self.rv_kappa);
        if self.four {
            let rv_wall = 0.45 * (1.0 + 0.35 * (self.dil - 1.0));
            p.ellipse(
                self.rv_centre,
                self.rv_angle,
                rv_a + rv_wall,
                rv_b + rv_wall,
                rv_kappa * rv_a,
                MYO * 0.9,
                0.3,
                Label::RvWall,
            );
        }
        // LV myocardium
        p.ellipse(
            self.centre,
            self.lv_angle,
            a + wall,
            b + wall,
            KAPPA * a,
            MYO,
            0.3,
            Label::LvWall,
        );
        if self.four {
            // septum filling the gap between the ventricles
            let top = add(self.apex, scale(self.u_lv, 1.4));
            let bot = add(self.base_mid, scale(self.n_lv, -self.base_half - 0.3));
            p.capsule(
                (top.0 - 0.5 * sep - 0.3, top.1),
                (bot.0 - 0.4 * sep, bot.1 - 0.2),
                0.55 * sep,
                MYO,
                0.3,
                Label::LvWall,
            );
            p.ellipse(
                self.rv_centre,
                self.rv_angle,
                rv_a,
                rv_b,
                rv_kappa * rv_a,
                BLOOD,
                0.28,
                Label::RvCavity,
            );
        }
        p.ellipse(
            self.centre,
            self.lv_angle,
            a,
            b,
            KAPPA * a,
            BLOOD,
            0.28,
            Label::LvCavity,
        );
    }

    /// Atrial cavities; in four chambers also the interatrial septum and the fibrous crux.
    fn paint_atrial_cavities(&self, p: &mut Painter<'_>) {
        p.ellipse(
            self.la_centre,
            std::f64::consts::FRAC_PI_2,
            self.la_a,
            self.la_b,
            f64::INFINITY,
            BLOOD,
            0.3,
            Label::LaCavity,
        );
        if !self.four {
            return;
        }
        p.ellipse(
            self.ra_centre,
            std::f64::consts::FRAC_PI_2,
            self.ra_a,
            self.ra_b,
            f64::INFINITY,
            BLOOD,
            0.3,
            Label::RaCavity,
        );
        // faint interatrial septum (often drops out in real A4C)
        let base_mid = self.base_mid;
        let top = (
            0.5 * (base_mid.0 - self.base_half + self.rv_base.0 + self.rv_base_half) - 0.2,
            base_mid.1 + 0.6,
        );
        p.capsule(
            top,
            (top.0 + 0.1, top.1 + 0.8 * self.la_a),
            0.14,
            ATRIAL_WALL * 0.6,
            0.25,
            Label::Tissue,
        );
        // fibrous crux
        p.capsule(
            (top.0, base_mid.1 - 0.4),
            (top.0, base_mid.1 + 0.3),
            0.3,
            MYO * 1.2,
            0.25,
            Label::Tissue,
        );
    }

    /// The AV valves, and in three chambers the aortic root with its cusps.
    fn paint_valves(&self, p: &mut Painter<'_>, h: &HeartParams, st: &HeartState) {
        let sept_pt = add(self.base_mid, scale(self.n_lv, -self.base_half));
        let lat_pt = add(self.base_mid, scale(self.n_lv, self.base_half));
        let annulus = 2.0 * self.base_half;
        let open = st.av_valve_open;
        if self.kind == Apical::ThreeChamber {
            // LVOT / aortic root leaving the base on the septal side, heading down and right
            let r = 0.5 * h.aortic_root_cm;
            let ao_start = add(sept_pt, (0.3, 0.2));
            let ao_dir = dir(std::f64::consts::FRAC_PI_2 - 0.75);
            let ao_end = add(ao_start, scale(ao_dir, 14.0));
            p.capsule(ao_start, ao_end, r + 0.22, VESSEL_WALL, 0.25, Label::Aorta);
            p.capsule(ao_start, ao_end, r, BLOOD, 0.25, Label::Aorta);
            // aortic cusps: along the walls when open, meeting in the centre when closed
            let so = st.sl_valve_open;
            let root = add(ao_start, scale(ao_dir, 0.6));
            let nrm = (-ao_dir.1, ao_dir.0);
            for side in [-1.0, 1.0] {
                let hinge = add(root, scale(nrm, side * r));
                let closed_tip = add(root, scale(ao_dir, 0.3));
                let open_tip = add(hinge, scale(ao_dir, 1.0));
                let tip = lerp2(closed_tip, open_tip, so);
                p.capsule(hinge, tip, 0.07, VALVE, 0.12, Label::Valve);
            }
            // the mitral valve then lies between the lateral annulus and the aorto-mitral
            // continuity
        }
        mitral(p, sept_pt, lat_pt, self.u_lv, annulus, open);
        if self.four {
            let t_sept = add(self.rv_base, (self.rv_base_half, 0.0));
            let t_lat = add(self.rv_base, (-self.rv_base_half, 0.0));
            mitral(p, t_sept, t_lat, self.u_rv, 2.0 * self.rv_base_half, open);
        }
    }

    /// Left atrial appendage and coronary sinus.
    fn paint_two_chamber_extras(&self, p: &mut Painter<'_>) {
        let (la_a, la_b) = (self.la_a, self.la_b);
        let laa = add(self.la_centre, (la_b + 0.2, -0.5 * la_a));
        p.ellipse(
            laa,
            0.6,
            0.9,
            0.45,
            f64::INFINITY,
            BLOOD,
            0.25,
            Label::LaCavity,
        );
        let cs = add(self.base_mid, (-self.base_half - 0.5, 0.4));
        p.circle(cs, 0.45, VESSEL_WALL, 0.2, Label::Vessel);
        p.circle(cs, 0.3, BLOOD, 0.2, Label::Vessel);
    }
}

fn lerp2(a: (f64, f64), b: (f64, f64), t: f64) -> (f64, f64) {
    (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
}

/// Two AV-valve leaflets hinged at the annulus points; `u` points apex → base.
fn mitral(
    p: &mut Painter<'_>,
    hinge_a: (f64, f64),
    hinge_b: (f64, f64),
    u: (f64, f64),
    annulus: f64,
    open: f64,
) {
    let mid = lerp2(hinge_a, hinge_b, 0.5);
    for (hinge, frac) in [(hinge_a, 0.55), (hinge_b, 0.42)] {
        let length = frac * annulus;
        // closed: pointing at the coaptation point slightly on the ventricular side
        let coapt = add(mid, scale(u, -0.35));
        let to = (coapt.0 - hinge.0, coapt.1 - hinge.1);
        let l = (to.0 * to.0 + to.1 * to.1).sqrt().max(1e-6);
        let closed_dir = (to.0 / l, to.1 / l);
        // open: into the ventricle, nearly parallel to the walls
        let open_dir = (-u.0 + 0.25 * (mid.0 - hinge.0).signum() * u.1.abs(), -u.1);
        let ol = (open_dir.0 * open_dir.0 + open_dir.1 * open_dir.1).sqrt();
        let d = lerp2(closed_dir, (open_dir.0 / ol, open_dir.1 / ol), open);
        let dl = (d.0 * d.0 + d.1 * d.1).sqrt().max(1e-6);
        let tip = add(hinge, scale((d.0 / dl, d.1 / dl), length));
        p.capsule(hinge, tip, 0.09, VALVE, 0.14, Label::Valve);
    }
}

/// Parasternal long axis: RV anterior, LV horizontal with apex to the left, aorta and LA right.
fn plax(out: &mut Vec<Prim>, h: &HeartParams, st: &HeartState, layout: &Layout) -> (f64, f64) {
    let place = Place::new(layout.heart_tilt, 0.0, 0.0);
    let mut p = Painter::new(out, place);
    let top = layout.heart_depth; // anterior RV wall
    let dil = st.rv_dilation;
    let rv_free = 0.45 * (1.0 + 0.35 * (dil - 1.0));
    let rv_h = 1.15 * dil * (0.85 + 0.15 * st.rv_scale); // RV cavity height
    let sep = st.lv_wall;
    let (a, b) = (0.95 * st.lv_a, st.lv_b);
    let lv_angle: f64 = -0.12; // apex (left) slightly deeper
    let u = dir(lv_angle);
    // base on the right at x ~ +1.2; the LV centre follows the long-axis shortening
    let base_x = 1.0;
    let ivs_bottom = top + rv_free + rv_h + 2.0 * sep;
    let lv_cy = ivs_bottom + st.lv_b_ed;
    let centre = (base_x - KAPPA * a * u.0, lv_cy - KAPPA * a * u.1);
    let post_wall_bottom = lv_cy + st.lv_b_ed + 2.0 * h.wall_thickness_cm + 0.1;

    // pericardium behind the posterior wall and epicardial fat
    // pericardium: the lower cap of a wide ellipse, bright, just behind the posterior wall
    let up = -std::f64::consts::FRAC_PI_2 - 0.06;
    let pc = (base_x - 3.0, post_wall_bottom + 0.25 - 6.0);
    p.ellipse(pc, up, 6.0, 14.0, -4.6, PERI, 0.3, Label::Pericardium);
    p.ellipse(pc, up, 5.75, 13.9, -4.6, FAT, 0.3, Label::Tissue);
    // RV free wall and cavity (RVOT extends over the aortic root to the right)
    let rv_c = (-3.0, top + rv_free + 0.5 * rv_h);
    p.ellipse(
        rv_c,
        -0.03,
        12.0,
        0.5 * rv_h + rv_free,
        f64::INFINITY,
        MYO * 0.9,
        0.3,
        Label::RvWall,
    );
    // septum + posterior wall = LV myocardium
    p.ellipse(
        centre,
        lv_angle,
        a + sep,
        b + sep,
        KAPPA * a + 0.2,
        MYO,
        0.3,
        Label::LvWall,
    );
    p.ellipse(
        rv_c,
        -0.03,
        12.0,
        0.5 * rv_h,
        f64::INFINITY,
        BLOOD,
        0.3,
        Label::RvCavity,
    );
    p.ellipse(
        centre,
        lv_angle,
        a,
        b,
        KAPPA * a,
        BLOOD,
        0.28,
        Label::LvCavity,
    );

    // aortic root continuing from the septum, to the right
    let r = 0.5 * h.aortic_root_cm;
    let ao_y = top + rv_free + rv_h + 0.2 + r;
    let ao0 = (base_x - 0.6, ao_y + 0.1);
    let ao1 = (base_x + 14.0, ao_y - 0.8);
    p.capsule(ao0, ao1, r + 0.25, VESSEL_WALL, 0.25, Label::Aorta);
    p.capsule(ao0, ao1, r, BLOOD, 0.25, Label::Aorta);
    // aortic cusps
    let so = st.sl_valve_open;
    let cusp_x = base_x + 0.9;
    for side in [-1.0, 1.0] {
        let hinge = (cusp_x, ao_y + side * r);
        let tip = lerp2(
            (cusp_x + 0.35, ao_y),
            (cusp_x + 1.2, ao_y + side * (r - 0.1)),
            so,
        );
        p.capsule(hinge, tip, 0.07, VALVE, 0.12, Label::Valve);
    }
    // LA behind the aortic root
    let la_r = 1.75 * h.la_size_factor * st.atrial_scale;
    let la_c = (base_x + 2.4, ao_y + r + 0.45 + la_r);
    p.circle(la_c, la_r + 0.25, ATRIAL_WALL, 0.3, Label::Tissue);
    p.circle(la_c, la_r, BLOOD, 0.3, Label::LaCavity);
    // descending aorta behind the LA/LV junction
    let da = (base_x + 0.9, la_c.1 + la_r + 1.3);
    p.circle(da, 1.0, VESSEL_WALL, 0.2, Label::Aorta);
    p.circle(da, 0.75, BLOOD, 0.2, Label::Aorta);
    // mitral leaflets: anterior from the aortic root (aorto-mitral continuity), posterior from
    // the posterior annulus
    let ant = (base_x - 0.1, ao_y + r + 0.15);
    let post = (
        base_x + 0.1,
        lv_cy + b * (1.0 - KAPPA * KAPPA).sqrt() * 0.95,
    );
    mitral(
        &mut p,
        ant,
        post,
        u,
        (post.1 - ant.1).abs(),
        st.av_valve_open,
    );
    p.to_heart(centre)
}

/// Parasternal short axis at the papillary level: round LV, crescent RV anterior, septum
/// flattening with the RVSP analogue.
fn psax(out: &mut Vec<Prim>, h: &HeartParams, st: &HeartState, layout: &Layout) -> (f64, f64) {
    let place = Place::new(layout.heart_tilt, 0.0, 0.0);
    let mut p = Painter::new(out, place);
    let dil = st.rv_dilation;
    let b = st.lv_b * 0.97;
    let wall = st.lv_wall_sax;
    let rv_w = 1.0 * dil * st.rv_scale;
    let rv_free = 0.45 * (1.0 + 0.35 * (dil - 1.0));
    let top = layout.heart_depth;
    let c = (
        0.5,
        top + rv_free + 1.0 * dil + 2.0 * h.wall_thickness_cm + st.lv_b_ed * 0.97,
    );
    // direction from the LV centre toward the RV (anterior, screen upper-left)
    let to_rv_angle = -std::f64::consts::FRAC_PI_2 - 0.55;
    let to_rv = dir(to_rv_angle);
    let flat = st.flattening;

    // pericardium ring (visible posteriorly)
    let peri_r = st.lv_b_ed * 0.97 + h.wall_thickness_cm + 0.35;
    // posterior cap only (anteriorly the RV and chest wall lie against it)
    p.ellipse(
        c,
        to_rv_angle,
        peri_r + 0.22,
        peri_r + 0.22,
        -0.2 * peri_r,
        PERI * 0.85,
        0.3,
        Label::Pericardium,
    );
    p.ellipse(
        c,
        to_rv_angle,
        peri_r,
        peri_r,
        -0.2 * peri_r,
        FAT,
        0.3,
        Label::Tissue,
    );
    // RV: a wide ellipse centred in front of the LV; the LV myocardium painted over it leaves
    // the crescent
    let outer = st.lv_b_ed * 0.97 + h.wall_thickness_cm;
    let rv_c = add(c, scale(to_rv, 0.75 * outer));
    let rv_long = 1.15 * outer * (1.0 + 0.2 * (dil - 1.0));
    let rv_rad = 0.35 * outer + 0.8 * rv_w;
    let tangent = to_rv_angle + std::f64::consts::FRAC_PI_2;
    p.ellipse(
        rv_c,
        tangent,
        rv_long + rv_free,
        rv_rad + rv_free,
        f64::INFINITY,
        MYO * 0.9,
        0.3,
        Label::RvWall,
    );
    p.ellipse(
        rv_c,
        tangent,
        rv_long,
        rv_rad,
        f64::INFINITY,
        BLOOD,
        0.3,
        Label::RvCavity,
    );
    // LV myocardium and cavity, cut flat on the septal side
    let sep_cut = (1.0 - flat) * b;
    p.ellipse(
        c,
        to_rv_angle,
        b + wall,
        b + wall,
        sep_cut + wall,
        MYO,
        0.3,
        Label::LvWall,
    );
    p.ellipse(c, to_rv_angle, b, b, sep_cut, BLOOD, 0.28, Label::LvCavity);
    // papillary muscles at ~4 and ~8 o'clock
    for ang in [0.75_f64, 2.35] {
        let pc = add(c, scale(dir(ang), 0.62 * b));
        p.circle(
            pc,
            0.3 * st.lv_b_ed * (1.0 + 0.25 * st.contraction) * 0.6,
            MYO * 1.1,
            0.25,
            Label::LvWall,
        );
    }
    p.to_heart(c)
}
