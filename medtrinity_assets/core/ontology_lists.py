"""The ontology's curated word lists (:mod:`medtrinity_assets.core.ontology`): stop words, and the
anatomy, technique and finding cues its kind rules read. Multi-word terms are written with "_"; all
are compared in normalised form."""

from __future__ import annotations

STOP_WORDS = """patient person human adult aged child infant man woman male female image imaging study series
    collection scan view left right normal abnormal other unknown unspecified body tissue disease research
    method time role data record name light water air culture rest work risk growth health family history
    reading writing nature science safety color sound noise memory area anatomy biology physics medicine white
    black lead art sex marked mass region site sample specimen slide section report""".split()
ANATOMY_TERMS = """tibia fibula femur humerus radius ulna patella pelvis skull spine vertebra rib sternum
    scapula clavicle mandible maxilla bone cartilage joint knee hip ankle wrist elbow shoulder hand foot
    finger toe liver kidney pancreas spleen stomach colon rectum intestine bowel duodenum jejunum ileum cecum
    esophagus gallbladder bladder prostate uterus ovary testis breast lung heart aorta brain cerebellum
    thalamus hippocampus retina macula cornea iris choroid sclera eye ear nose mouth tongue tooth jaw neck
    thyroid trachea bronchus pleura diaphragm abdomen chest thorax head face skin epidermis dermis gray_matter
    white_matter spinal_cord bone_marrow optic_disk optic_disc fundus_oculi gastric_fundus lymph_node
    adipose_tissue whole_body cultured_cells""".split()
ANATOMY_HEADS = """artery vein vessel capillary nerve muscle tendon ligament fascia gland duct node lobe
    cortex bone joint cell tissue membrane epithelium endothelium mucosa valve ventricle atrium sinus cord
    matter marrow neuron fiber layer wall organ plexus""".split()
ANATOMY_SUFFIXES = ("cyte", "blast", "phage")
TECHNIQUE_TERMS = """immunohistochemistry histochemistry cytochemistry immunocytochemistry
    staining_and_labeling h&e hematoxylin_and_eosin magnetic_resonance x-ray radiograph ultrasound
    echocardiogram angiogram mammogram scintigram""".split()
TECHNIQUE_HEADS = "imaging staining stain tomosynthesis photography".split()
NOT_TECHNIQUE = """bibliography demography geography historiography oceanography paleography phylogeography
    topography crystallography chromatography electrochromatography polarography stereolithography holography
    spectrography""".split()
FINDING_WORDS = """neoplasm tumor cancer carcinoma malignancy lesion cyst fracture aneurysm microaneurysm
    hemorrhage bleeding edema infarction infarct ischemia stenosis occlusion obstruction thrombus embolism
    ulcer hernia calculus stone polyp nodule effusion abscess infection inflammation disease disorder syndrome
    injury wound abnormality malformation anomaly deformity dislocation rupture perforation fistula atresia
    agenesis metastasis calcification opacity exudate drusen pneumonia pneumothorax degeneration failure
    insufficiency deficiency hypertension hypotension diabetes obesity sepsis pain fever cough dyspnea apnea
    nevus wart eczema acne stroke seizure dementia palsy paralysis spasm tremor ataxia cataract myopia
    poisoning burn contusion laceration sprain hydrocephalus shock thrombosis complication""".split()
FINDING_SUFFIXES = ("oma", "itis", "osis", "pathy", "emia", "plasia", "algia", "megaly", "rrhage", "rrhea",
                    "cele", "trophy", "ectasis", "ectasia", "penia", "plegia", "uria", "iasis", "lepsy")
NOT_FINDING = """ambystoma diploma eurycoma hebeloma hedeoma loma phoma stroma stoma zygoma triatoma
    tricholoma xanthosoma ancylostoma echinostoma gnathostoma ophiostoma schistosoma trypanosoma antiglaucoma
    hybridoma bitis immitis mitis sideritis vitis aerobiosis anaerobiosis anastomosis antibiosis aponeurosis
    apoptosis cuproptosis cytodiagnosis cytophagocytosis diagnosis disulfidptosis efferocytosis
    electrodiagnosis electronarcosis electroosmosis endocytosis entosis eryptosis exocytosis ferroptosis
    hypnosis meiosis metamorphosis mitosis narcosis necroptosis osmosis overdiagnosis parabiosis paraptosis
    parapsilosis phagocytosis pinocytosis prognosis pyroptosis serodiagnosis stereognosis symbiosis
    transcytosis trogocytosis xenodiagnosis allelopathy apathy empathy homeopathy naturopathy telepathy
    academia artemia lagerstroemia wikstroemia holothuria luria pasteuria venturia""".split()
# a label with one of these heads is an agent, not the disease it is named after ("Hepatitis B Virus")
AGENT_HEADS = "virus vaccine antibody antigen agent drug protein receptor gene inhibitor enzyme toxin".split()
# MeSH labels whose words mean something else in imaging metadata ("PET" is not "Pets")
MESH_HOMONYMS = {"Pets"}
# how ICD-10 words a finding that metadata words plainly ("lung cancer" -> "malignant neoplasm")
ICD_SYNONYMS = {"cancer": "malignant neoplasm", "carcinoma": "malignant neoplasm", "tumor": "neoplasm",
                "stone": "calculus"}
